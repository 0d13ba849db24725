"""The HTTP layer: routes (`routes`, `operations`), request models (`protocol`), documented
response models (`schemas`), per-route services (`chat`, `completions`) and encoders
(`chat_encoder`, `completion_encoder`), the shared serving path (`serving`), SSE transport
(`sse`) and middlewares (`middleware`)."""
