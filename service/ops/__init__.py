"""Operations: settings, metrics, logs, graceful shutdown, start-up checks."""
