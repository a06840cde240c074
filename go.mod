module github.com/ferry-project/ferry

go 1.26
