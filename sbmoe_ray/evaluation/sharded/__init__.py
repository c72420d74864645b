"""Corpora of millions of documents: encoded in resumable shard files by Ray tasks (:mod:`.encode`), searched
shard by shard or with an approximate index whose recall is measured (:mod:`.search`), scored as everywhere
(:mod:`.evaluate`)."""
