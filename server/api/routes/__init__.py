"""HTTP bindings: the generating routes (`generation`), the render routes (`render`),
`/tokenize` and `/detokenize` (`tokenization`), and the routes about the server itself: model
list, health probes, metrics, version (`server_info`)."""
