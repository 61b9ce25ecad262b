"""Distributed GLAM extraction, Parquet output, FAISS indexes and evaluation."""
