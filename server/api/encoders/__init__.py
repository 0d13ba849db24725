"""Generated choices → the wire: one encoder per generating route (`chat`, `completions`,
`responses`), with what they share (`frames`: JSON and SSE frames, `logprobs`)."""
