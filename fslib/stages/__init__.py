"""One module per notebook (the decisions each stage makes), and the pipeline that runs them."""
