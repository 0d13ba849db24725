"""Per-route services: a validated request → a `PreparedGeneration` (`chat`, `completions`,
`responses`), shared checks (`validation`), and the Responses API's stored and background
responses (`stored_responses`, `background`)."""
