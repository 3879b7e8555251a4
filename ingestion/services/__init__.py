"""Write services of the ingestion app: imports of places and loads of regions."""
