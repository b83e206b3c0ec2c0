"""Store adapters: Milvus for vectors, Redis for item records. Dependency errors are translated here."""
