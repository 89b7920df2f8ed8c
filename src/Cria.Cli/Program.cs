System.Console.WriteLine("cria");
