"""Base encoders derived on this machine (``sbmoe derive``): a layer cut of a larger encoder, distilled."""
