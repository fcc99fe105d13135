"""On-disk formats, read and written without any model logic: the file names of an export, safetensors
headers read without memory maps, and the compact 2:4 tensor layout."""
