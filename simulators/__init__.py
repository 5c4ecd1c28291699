"""Simulated pharma plants: unit process models, fault injection with a ground-truth log,
served over OPC-UA (asyncua) and MQTT (JSON), for tests and demos."""
