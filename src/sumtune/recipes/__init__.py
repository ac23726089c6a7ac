"""What a command runs: `train`, `evaluate`, `experiment` - each a short recipe over the
components in training/, data/, methods/, decoding/ and report/."""
