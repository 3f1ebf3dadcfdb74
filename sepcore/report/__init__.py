"""Self-contained HTML reports and the plots in them."""
