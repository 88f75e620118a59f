"""Small shared helpers: logging, timers, memory accounting."""
