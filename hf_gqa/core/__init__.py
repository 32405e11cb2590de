"""Pure building blocks with no knowledge of model families or variants: head regrouping, head similarity, the
lazy `TensorMap`, option declarations, the training-hook interface and console formatting."""
