"""Layer 0, the contract: the stage contract, the task, errors and records, the sample model, the strict
config base and config loading. Imports nothing else of the project."""
