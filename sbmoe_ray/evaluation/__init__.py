"""Testing a retriever as BEIR does: metrics equal to BEIR's ``EvaluateRetrieval`` (:mod:`.metrics`), encoding
and exact FAISS search (:mod:`.dense`), a frozen encoder's embedding cache (:mod:`.embedding_cache`), a
checkpoint or the base model tested cached or live (:mod:`.checkpoint`), and large corpora in shards over Ray
workers (:mod:`.sharded`; its settings: :mod:`.config`)."""
