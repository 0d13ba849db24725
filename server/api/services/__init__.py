"""Per-route services: a validated request → a `PreparedGeneration` (`chat`, `completions`,
`responses`), the tools a request allows (`tool_calls`), shared checks (`validation`), and the
Responses API's stored and background responses (`stored_responses`, `background`)."""
