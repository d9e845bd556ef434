"""actionstream.streams: events, producer, Kafka broker launcher, Faust worker, feature API."""
