"""The data layer: one Arrow data model, readers for public formats, the corpus builder."""
