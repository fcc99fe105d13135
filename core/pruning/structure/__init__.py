"""Structured shrinking: whole MLP channels and whole key/value groups of attention heads are removed,
so the model's matrices (and `config.json`) get smaller. `shrink` is the block loop; `importance` the
channel scores (FLAP's fluctuation, Wanda or magnitude summed per channel); `surgery` cuts the modules."""
