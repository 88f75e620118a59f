"""The training engine and its optimizer/schedule factories."""
