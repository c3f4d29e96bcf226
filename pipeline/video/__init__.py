"""Layer 1, video I/O: probing, decoding, frame sampling and extraction, image ops, inputs, and the probe and
decode stages. Imports only the contract (`pipeline.core`)."""
