"""`airoboros-server chat`: the model card's terminal chat, against a running server over HTTP.

The client speaks only HTTP, through the OpenAI SDK, so it works with any of this project's
servers (and, without the airoboros extensions, with other OpenAI-compatible ones).

Modules, one job each:

- `options`: the `chat` subcommand's flags and their defaults (the model card's sampling).
- `commands`: a typed line → a question or a slash command (pure parsing, no I/O).
- `attachments`: a `/doc` file and its `key=value` metadata → a `documents` entry.
- `session`: the conversation: what was said, what goes into the next request, `/save`.
- `reader`: reading a message from the terminal (line editing, history, pastes).
- `spinner`: the progress line while waiting for the server.
- `client`: the server over the OpenAI SDK: models, streamed answers, renders, error lines.
- `app`: the loop that wires these together.
"""

from server.terminal.options import add_chat_arguments

__all__ = ["add_chat_arguments"]
