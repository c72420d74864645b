"""The trained retriever outside the toolkit: a sentence-transformers model folder with its model card
(``sbmoe export``), and the study's chosen models logged and registered in MLflow
(:mod:`sbmoe_ray.tracking.models`)."""
