"""The server as a process: its state and phases (`state`), start-up, drain and engine death
(`lifecycle`), signal handling around uvicorn (`runner`), admission control (`admission`), and
HTTPS for uvicorn (`tls`)."""
