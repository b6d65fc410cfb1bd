"""Japanese Wikipedia dumps: reading pages, cleaning wikitext, splitting sentences."""
