"""The local cluster: Kafka, Cassandra and a GCS emulator, installed and run by the
project itself from the registries this machine reaches (Maven Central, the Go module
proxy), cached in the user cache dir."""
