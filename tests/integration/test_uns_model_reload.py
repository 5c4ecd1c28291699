"""An analytics worker (real Mosquitto, in this process) swaps a newly stored model version into
the engine of the partition that owns the unit, without a restart, audits the swap in its own
trail, and scores the next values published on the UNS with it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from analytics.models import ModelStore, fit_unit_model
from controltower.audit import verify_trail
from controltower.services import AnalyticsWorker
from controltower.uns import UnsPublisher, partition_of
from tests.analytics.simulated_unit import UNIT, batch_seconds, batches, simulate
from tests.integration.conftest import wait_until
from tests.integration.test_uns_batch_events import PARTITIONS, SITE, worker_site

TAGS = tuple(t.tag_id for t in SITE.tag_table())


async def test_the_worker_swaps_in_a_new_model_version(mosquitto, tmp_path: Path) -> None:
    samples = simulate(SITE, seed=7, seconds=3.2 * batch_seconds(SITE))
    store = ModelStore(tmp_path / "site" / "models")
    store.save(fit_unit_model("knn", batches(samples, 2, 2), unit=UNIT, variables=TAGS))
    site = worker_site(tmp_path / "site", mosquitto.url)
    models = site.detectors.models.model_copy(update={"reload_s": 0.3})
    site = site.model_copy(update={"detectors": site.detectors.model_copy(update={"models": models})})
    worker = AnalyticsWorker(site, data_dir=tmp_path / "worker", name="w1")
    publisher = UnsPublisher(site.uns, client_id="test-collect-reload")
    tasks = [asyncio.create_task(worker.run()), asyncio.create_task(publisher.run())]
    partition = partition_of(UNIT, PARTITIONS)
    try:
        await wait_until(lambda: worker.owned == set(range(PARTITIONS)) and publisher.stats.connected, 30,
                         "worker and publisher ready")
        engine = worker.engines[partition]
        assert engine.model_versions() == {(UNIT, "knn"): 1}
        store.save(fit_unit_model("knn", batches(samples, 3, 3), unit=UNIT, variables=TAGS))
        await wait_until(lambda: engine.model_versions()[(UNIT, "knn")] == 2, 30, "version 2 staged")
        live = batches(samples, 1, 1).head(500)
        publisher.publish_batch(live)
        await wait_until(lambda: worker.counts["samples_detected"] >= live.height, 60, "the values scored")
        assert [(m.name, m.version) for m in engine.monitors] == [("knn", 2)]
        assert f"knn:{UNIT}" in engine.last_scores
        # The swap is in the worker's own audit trail, which still verifies.
        load = worker.audit.last("model.load")
        assert load["target"] == f"{UNIT} knn" and load["details"] == {
            "version": 2, "previous_version": 1, "by": "analytics worker w1"}
        assert verify_trail(worker.audit.path).ok
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        worker.close()
