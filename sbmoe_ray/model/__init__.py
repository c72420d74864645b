"""The SB-MoE bi-encoder (Sokli et al. 2025): what defines one (:mod:`.config`, torch-free), base encoders by
name (:mod:`.backbones`), the SB-MoE block and its expert load (:mod:`.moe`), the bi-encoder (:mod:`.bi_encoder`)
and the losses (:mod:`.losses`)."""
