"""Reports written from a results directory's results.json: junit.xml, index.html."""
