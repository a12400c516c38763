"""The Ollama API, both ways: ``wire`` converts between it and OpenAI's; ``api`` serves it to
Ollama clients; ``mtproxy.runtimes.ollama`` speaks it to Ollama backends."""
