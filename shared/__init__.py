"""What every part of bookrec needs: settings, Redis keys, payload schemas, dataset reading, errors."""
