"""What the test packages share: one database creator (schemas built by the migrations), one
settings factory and one job factory. Anything specific to one package stays in that package."""
