"""What a person or a program sees: live progress, JSON output, the HTML report, photos."""
