"""Collectors: sources read OPC-UA and MQTT into columnar sample batches; sinks (historians)
store them. A source never knows which sink receives its batches; `collector.pipeline` joins them."""
