"""The report's sections, in the order a reader meets them (:data:`sbmoe_ray.analysis.report.SECTIONS`): the
first screen (the answer), stage 2's detail, stage 1's, the method. Each module owns its lines and the figures
it links."""
