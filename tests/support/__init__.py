"""What the tests share: fakes, configurations, broker and process helpers."""
