"""Shipment-notification worker: Kafka shipment-status events in, customer email and SMS out."""
