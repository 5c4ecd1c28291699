"""The batch-event journal: what is appended survives a reopen until acknowledged, in order; a
torn last record is cut off; sequence numbers keep growing after the file is emptied."""

from __future__ import annotations

from pathlib import Path

from collector.event_journal import JOURNAL_NAME, EventJournal, read_journal
from tests.collector.test_batch_events import events


def test_pending_frames_survive_a_reopen_in_order_until_acknowledged(tmp_path: Path) -> None:
    frames = events().with_row_index("i").partition_by("i", maintain_order=True)
    frames = [f.drop("i") for f in frames]
    journal = EventJournal(tmp_path)
    seqs = [journal.append(f) for f in frames]
    journal.close()  # as a kill -9 would: nothing acknowledged

    journal = EventJournal(tmp_path)
    assert [s for s, _ in journal.pending()] == seqs
    assert all(got.equals(want) for (_, got), want in zip(journal.pending(), frames, strict=True))
    journal.ack(seqs[1])
    journal.close()

    journal = EventJournal(tmp_path)
    assert [s for s, _ in journal.pending()] == seqs[2:]
    journal.ack(seqs[-1])
    assert (tmp_path / JOURNAL_NAME).stat().st_size == 0  # emptied once nothing is pending
    journal.close()

    journal = EventJournal(tmp_path)
    assert journal.pending() == []
    assert journal.append(frames[0]) == seqs[-1] + 1  # seq carries on from the cursor
    journal.close()


def test_a_torn_last_record_is_cut_off_and_the_rest_kept(tmp_path: Path) -> None:
    journal = EventJournal(tmp_path)
    journal.append(events().head(2))
    journal.append(events().tail(1))
    journal.close()
    path = tmp_path / JOURNAL_NAME
    path.write_bytes(path.read_bytes()[:-5])  # a crash mid-write

    journal = EventJournal(tmp_path)
    assert journal.corrupt_records == 1
    assert [f.height for _, f in journal.pending()] == [2]
    journal.append(events().tail(1))
    journal.close()
    assert read_journal(tmp_path).equals(events().head(2).vstack(events().tail(1)))
