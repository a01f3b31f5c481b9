"""engines/builtin."""
