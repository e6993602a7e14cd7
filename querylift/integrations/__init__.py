"""Client integrations for RAG frameworks (LangChain, LlamaIndex).

They live apart from the service, which never imports them: each module here needs its
framework installed (`pip install ".[langchain]"` or `".[llama-index]"` in a checkout) and
talks to a running querylift over HTTP only. Both send documents to `/embed` with
`input_type="document"`, which a plain OpenAI-protocol client does not do.
"""

from querylift.integrations._client import QueryliftError

__all__ = ["QueryliftError"]
