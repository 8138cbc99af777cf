"""Matrices: expanding a matrix file into cells (expand), running the cells in
parallel processes (scheduler), and one cell's process (cell).
"""
