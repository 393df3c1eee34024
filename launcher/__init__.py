"""(module map filled in below)"""
