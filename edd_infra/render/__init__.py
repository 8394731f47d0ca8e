"""Pure renderers: text for files, URLs and shell scripts. No Pulumi imports here."""
