"""The HTTP layer, by kind of module: `routes/` (HTTP bindings), `protocol/` (request and
documented response models), `services/` (per-route validation and preparation), `encoders/`
(choices → JSON bodies and SSE frames); beside them the tool calls between request and wire
(`tool_calls`, read by services and encoders), the shared serving path (`serving`), SSE
transport (`sse`), middlewares (`middleware`) and what routes reach through the app (`context`)."""
