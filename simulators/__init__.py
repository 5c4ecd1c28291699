"""Simulated pharma plants: unit process models, ISA-88 batches, sensor faults with a
ground-truth log, served over OPC-UA (asyncua) and MQTT (JSON), for tests and demos.

    units/        one process model per unit kind (bioreactor, tablet_press, filling_line)
                  and a generic one for everything else
    batches.py    batch ids and phases from a unit's recipe
    faults.py     spike / drift / stuck on sensor readings, and the ground-truth CSV
    plant.py      Plant: the whole site stepped in simulated time, samples as Polars frames
    opcua_server.py, mqtt_publisher.py   the plant on the wire
    service.py    SimulatorService and simulate(): what `controltower simulate` runs
"""
