"""BEIR datasets: read and validated with file:line errors (:mod:`.beir`), the paper's large zero-shot
collections by name and their topics (:mod:`.collections`), and which data a run used (:mod:`.provenance`)."""
