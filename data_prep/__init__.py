"""Turn image folders, archives of them and public data sets into FFCV files."""
